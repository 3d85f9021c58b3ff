--[[
  Bring back jobs whose lease expired (their worker died, froze or lost Redis), at most once per
  interval per queue across all workers.

  KEYS[1] queue ZSET     KEYS[2] active ZSET     KEYS[3] wake LIST     KEYS[4] queue stats HASH
  KEYS[5] reaper guard STRING       KEYS[6] finished-jobs ring HASH (tput)
  KEYS[7] workers ZSET (worker id -> last heartbeat ms)
  ARGV[1] key prefix     ARGV[2] guard ms (0: no guard)     ARGV[3] max stalls
  ARGV[4] dead letter "1" | "0"     ARGV[5] max jobs per call     ARGV[6] result ttl ms
  ARGV[7] errors kept per job       ARGV[8] gap ms (0: no serving clock)     ARGV[9] grace ms

  Serving clock (stats fields reap_seen_at, serving_since, ms): some live worker reaps every
  guard interval, so a silence longer than the gap means Redis was not serving (paused,
  unreachable, restarting) or no worker ran; the call that ends it starts a new serving period.
  A lease that expired before that is not its job's stall unless its owner is dead: it is left
  alone for the grace (its owner may renew or release it), then re-queued as a lost lease (not
  counted towards max stalls) if the owner has sent a heartbeat since, else counted as a stall.

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
-- #include runs
-- #include add_job
-- #include groups

local guard_ms, max_stalls, dead_letter = check_num(2, 'guard ms'), check_num(3, 'max stalls'),
  ARGV[4]
local limit, ttl_ms, keep = check_num(5, 'max jobs'), check_num(6, 'result ttl ms'),
  check_num(7, 'errors kept')
local gap_ms, grace_ms = 0, 0
if #ARGV >= 9 then gap_ms, grace_ms = check_num(8, 'gap ms'), check_num(9, 'grace ms') end
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'list')
check_type(KEYS[4], 'hash')
check_type(KEYS[5], 'string')
check_type(KEYS[6], 'hash')
if KEYS[7] then check_type(KEYS[7], 'zset') end
if guard_ms > 0 and rcall('EXISTS', KEYS[5]) == 1 then return { 'GUARDED' } end
local now = now_ms()
local expired = rcall('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #expired, 2 do
  local jk = check_job(expired[i])
  local queue = rcall('HGET', jk, 'queue')
  if queue then check_queue(queue) end
end
local since = 0 -- start of the current serving period (see the header)
local clock_reset = false
if gap_ms > 0 then
  local clock = rcall('HMGET', KEYS[4], 'reap_seen_at', 'serving_since')
  since = tonumber(clock[2] or '0') or 0
  if now - (tonumber(clock[1] or '0') or 0) > gap_ms then since, clock_reset = now, true end
end

if guard_ms > 0 then rcall('SET', KEYS[5], '1', 'PX', guard_ms) end
if gap_ms > 0 then
  rcall('HSET', KEYS[4], 'reap_seen_at', now)
  if clock_reset then rcall('HSET', KEYS[4], 'serving_since', now) end
end
local requeued, dead, finished = 0, {}, 0
for i = 1, #expired, 2 do
  local id, lease_end = expired[i], tonumber(expired[i + 1])
  local jk = job_key(id)
  local f = rcall('HMGET', jk, 'status', 'attempts', 'owner', 'queue')
  -- Expired while nobody could see Redis serving: was its owner dead, or Redis away?
  local outage, wait = false, false
  if lease_end < since and f[1] == 'active' then
    if now < since + grace_ms then
      wait = true -- its owner may still renew or release it
    else
      local beat = rcall('ZSCORE', KEYS[7], f[3] or '')
      outage = beat ~= false and tonumber(beat) >= since
    end
  end
  if not wait then rcall('ZREM', KEYS[2], id) end
  if f[1] == 'active' and not wait then
    drop_staging(jk, id)
    rcall('HINCRBY', jk, 'epoch', 1)
    local stalls, err = tonumber(rcall('HGET', jk, 'stalls') or '0'), nil
    if outage then
      err = cjson.encode({ type = 'LeaseLost', attempt = tonumber(f[2]), worker = f[3],
        message = 'lease expired while Redis was not serving (paused or unreachable); '
          .. 'not counted as a stall', at = now })
    else
      stalls = rcall('HINCRBY', jk, 'stalls', 1)
      err = cjson.encode({ type = 'Stalled', attempt = tonumber(f[2]), worker = f[3],
        message = 'lease expired: worker ' .. f[3] .. ' stopped renewing it (stall '
          .. stalls .. ')', at = now })
      rcall('HINCRBY', KEYS[4], 'stalled', 1)
    end
    rcall('HSET', jk, 'error', err, 'settled', 'reap', 'owner', '')
    rcall('LPUSH', errors_key(id), err)
    rcall('LTRIM', errors_key(id), 0, keep - 1)
    if rcall('HGET', jk, 'cancel_requested') == '1' then
      -- An operator cancelled it while its worker was gone: honour that instead of re-running.
      release_unique(jk, id)
      rcall('HSET', jk, 'status', 'cancelled', 'finished_at', now)
      expire_job(jk, id, ttl_ms)
      rcall('HINCRBY', KEYS[4], 'cancelled', 1)
      run_job_ended(jk, 'cancelled', now, ttl_ms)
      group_job_ended(jk, id, 'cancelled', now, ttl_ms)
      finished = finished + 1
    elseif stalls > max_stalls then
      local verdict = finish_dead(jk, id, f[4], now, dead_letter, ttl_ms, 'stalled')
      run_job_ended(jk, string.lower(verdict), now, ttl_ms)
      group_job_ended(jk, id, string.lower(verdict), now, ttl_ms)
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
