--[[
  Move dead-lettered jobs of one queue back to ready, attempts and stalls reset, payload kept.

  KEYS[1] dead ZSET      KEYS[2] queue ZSET     KEYS[3] wake LIST     KEYS[4] queue stats HASH
  ARGV[1] key prefix     ARGV[2] 'all' | 'ids'  ARGV[3] max jobs when 'all'
  ARGV[4] "1" dry run | "0"       ARGV[5..] job ids when 'ids'

  Returns: array of the ids moved (or that would move, on a dry run).
  Checks before the first write: the limit, the declared keys' types and each job's record; an
  error reply means nothing was written.
  Invariant: a job leaves the dead set only together with becoming ready again.
  Retry-safe: a moved job is no longer in the dead set, so a repeat moves nothing twice.
]]
-- #include common
-- #include runs

check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'list')
check_type(KEYS[4], 'hash')
local ids
if ARGV[2] == 'all' then
  ids = rcall('ZRANGE', KEYS[1], 0, check_num(3, 'max jobs') - 1)
elseif ARGV[2] ~= 'ids' then
  refuse('ARGV[2] must be all or ids, got ' .. tostring(ARGV[2]))
else
  ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
end
for _, id in ipairs(ids) do check_type(job_key(id), 'hash') end
local dry = ARGV[4] == '1'
local now = now_ms()
local moved = {}
for _, id in ipairs(ids) do
  if rcall('ZSCORE', KEYS[1], id) then
    local jk = job_key(id)
    if rcall('EXISTS', jk) == 0 then
      if not dry then rcall('ZREM', KEYS[1], id) end
    else
      moved[#moved + 1] = id
      if not dry then
        rcall('ZREM', KEYS[1], id)
        rcall('HSET', jk, 'status', 'queued', 'attempts', 0, 'stalls', 0, 'settled', '',
          'ready_at', now, 'requeued_at', now)
        -- A fresh run: a cancel requested during an earlier attempt does not carry over.
        rcall('HDEL', jk, 'finished_at', 'dead_reason', 'result', 'cancel_requested')
        rcall('PERSIST', jk)
        rcall('PERSIST', args_key(id)) -- a dead job keeps its arguments (none expire, but be sure)
        rcall('DEL', result_key(id))
        add_ready(KEYS[2], rcall('HGET', jk, 'priority'), now, id)
        run_job_reopened(jk, now)
        -- It left its group when it died (counted failed there): it now runs outside any group.
        rcall('HDEL', jk, 'grp')
      end
    end
  end
end
if #moved > 0 and not dry then
  wake(KEYS[3])
  rcall('HINCRBY', KEYS[4], 'requeued', #moved)
end
return moved
