--[[
  Bring back jobs whose lease expired (their worker died, froze or lost Redis), at most once per
  interval per queue across all workers.

  KEYS[1] queue ZSET     KEYS[2] active ZSET     KEYS[3] wake LIST     KEYS[4] queue stats HASH
  KEYS[5] reaper guard STRING       KEYS[6] finished-jobs ring HASH (tput)
  ARGV[1] key prefix     ARGV[2] guard ms (0: no guard)     ARGV[3] max stalls
  ARGV[4] dead letter "1" | "0"     ARGV[5] max jobs per call     ARGV[6] result ttl ms
  ARGV[7] errors kept per job

  Returns: {'GUARDED'} when another worker reaped within the interval, else
  {'OK', requeued count, dead count, then the ids dead-lettered as stalled}.
  Checks before the first write (the guard included): the numbers, the declared keys' types, and
  for every expired job its record, error list, unique key and its queue's keys; an error reply
  means nothing was written.
  Invariant: a job whose lease ran out gets a new epoch at once, so its stale owner is fenced
  even before anyone claims it again; the stall does not consume an attempt, but a job that
  stalls more than max stalls times is dead-lettered with reason "stalled" instead of looping.
  Retry-safe: a reaped job is no longer in `active` with an expired lease, so a repeat skips it.
]]
-- #include common

local guard_ms, max_stalls, dead_letter = check_num(2, 'guard ms'), check_num(3, 'max stalls'),
  ARGV[4]
local limit, ttl_ms, keep = check_num(5, 'max jobs'), check_num(6, 'result ttl ms'),
  check_num(7, 'errors kept')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'list')
check_type(KEYS[4], 'hash')
check_type(KEYS[5], 'string')
check_type(KEYS[6], 'hash')
if guard_ms > 0 and rcall('EXISTS', KEYS[5]) == 1 then return { 'GUARDED' } end
local now = now_ms()
local ids = rcall('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local jk = check_job(id)
  local queue = rcall('HGET', jk, 'queue')
  if queue then check_queue(queue) end
end

if guard_ms > 0 then rcall('SET', KEYS[5], '1', 'PX', guard_ms) end
local requeued, dead, finished = 0, {}, 0
for _, id in ipairs(ids) do
  rcall('ZREM', KEYS[2], id)
  local jk = job_key(id)
  local f = rcall('HMGET', jk, 'status', 'attempts', 'owner', 'queue')
  if f[1] == 'active' then
    rcall('HINCRBY', jk, 'epoch', 1)
    local stalls = rcall('HINCRBY', jk, 'stalls', 1)
    local err = cjson.encode({ type = 'Stalled', attempt = tonumber(f[2]), worker = f[3],
      message = 'lease expired: worker ' .. f[3] .. ' stopped renewing it (stall ' .. stalls .. ')',
      at = now })
    rcall('HSET', jk, 'error', err, 'settled', 'reap', 'owner', '')
    rcall('LPUSH', errors_key(id), err)
    rcall('LTRIM', errors_key(id), 0, keep - 1)
    rcall('HINCRBY', KEYS[4], 'stalled', 1)
    if rcall('HGET', jk, 'cancel_requested') == '1' then
      -- An operator cancelled it while its worker was gone: honour that instead of re-running.
      release_unique(jk, id)
      rcall('HSET', jk, 'status', 'cancelled', 'finished_at', now)
      expire_job(jk, id, ttl_ms)
      rcall('HINCRBY', KEYS[4], 'cancelled', 1)
      finished = finished + 1
    elseif stalls > max_stalls then
      finish_dead(jk, id, f[4], now, dead_letter, ttl_ms, 'stalled')
      dead[#dead + 1] = id
      finished = finished + 1
    else
      rcall('HINCRBY', jk, 'attempts', -1)
      rcall('HSET', jk, 'status', 'queued')
      local back = rcall('HMGET', jk, 'ready_at', 'priority')
      add_ready(KEYS[1], back[2], back[1], id)
      requeued = requeued + 1
    end
  end
end
count_finished(KEYS[6], now, finished)
if requeued > 0 then
  wake(KEYS[3])
  rcall('HINCRBY', KEYS[4], 'reaped', requeued)
end
local out = { 'OK', requeued, #dead }
for _, id in ipairs(dead) do out[#out + 1] = id end
return out
