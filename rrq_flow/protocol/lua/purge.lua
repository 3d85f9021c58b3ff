--[[
  Delete dead-lettered jobs of one queue for good (the DLQ "purge"), a batch at a time.

  KEYS[1] dead ZSET      KEYS[2] queue stats HASH
  ARGV[1] key prefix     ARGV[2] max jobs this call

  Returns: {purged, left}: jobs whose record, error list, child index and arguments were
  deleted, and how many entries the dead set still holds (call again while left > 0).
  Checks before the first write: the limit, the declared keys' types and each listed job's record;
  an error reply means nothing was written.
  Invariant: only a job that is still dead loses its record, in the same step as it leaves the
  dead set, so a job requeued concurrently is never deleted; a stray entry (record gone, or a
  job no longer dead) is only dropped from the set.
  Retry-safe: a purged job is no longer in the dead set, so a repeat deletes nothing twice.
]]
-- #include common

local limit = check_num(2, 'max jobs')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'hash')
local ids = rcall('ZRANGE', KEYS[1], 0, limit - 1)
for _, id in ipairs(ids) do check_type(job_key(id), 'hash') end
local purged = 0
for _, id in ipairs(ids) do
  local jk = job_key(id)
  rcall('ZREM', KEYS[1], id)
  if rcall('HGET', jk, 'status') == 'dead' then
    rcall('DEL', jk, errors_key(id), children_key(id), args_key(id), result_key(id))
    purged = purged + 1
  end
end
if purged > 0 then rcall('HINCRBY', KEYS[2], 'purged', purged) end
return { purged, rcall('ZCARD', KEYS[1]) }
