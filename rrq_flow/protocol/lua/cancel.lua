--[[
  Cancel one job: a waiting one (queued, scheduled, retrying) at once; an active one at its
  worker, which sees the request on its next lease renewal, cancels the handler and records the
  job as cancelled.

  KEYS[1] queue ZSET     KEYS[2] retry ZSET     KEYS[3] queue stats HASH
  ARGV[1] key prefix     ARGV[2] job id     ARGV[3] result ttl ms

  Returns: {verdict, status before}: 'CANCELLED' | 'CANCELLING' (active; the worker finishes it) |
  'FINISHED' (already terminal: nothing changed) | 'MISSING'.
  Checks before the first write: the result TTL, the declared keys' types, the job's record, error
  list and unique key; an error reply means nothing was written.
  Invariant: a cancelled job is terminal and recorded once; its unique key is released.
  Retry-safe: a repeat finds the job cancelled (FINISHED) or still CANCELLING.
]]
-- #include common
-- #include runs
-- #include add_job
-- #include groups

local id, ttl_ms = ARGV[2], check_num(3, 'result ttl ms')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'hash')
local jk = check_job(id)
local status = rcall('HGET', jk, 'status')
if not status then return { 'MISSING', '' } end
if status == 'active' then
  rcall('HSET', jk, 'cancel_requested', '1')
  return { 'CANCELLING', status }
end
if status == 'queued' or status == 'scheduled' or status == 'retrying' then
  local now = now_ms()
  rcall('ZREM', ready_key_for(KEYS[1], rcall('HGET', jk, 'priority')), id)
  rcall('ZREM', KEYS[2], id)
  release_unique(jk, id)
  rcall('HSET', jk, 'status', 'cancelled', 'finished_at', now, 'settled', 'cancel')
  expire_job(jk, id, ttl_ms)
  rcall('HINCRBY', KEYS[3], 'cancelled', 1)
  run_job_ended(jk, 'cancelled', now, ttl_ms)
  group_job_ended(jk, id, 'cancelled', now, ttl_ms)
  return { 'CANCELLED', status }
end
return { 'FINISHED', status }
