--[[
  Record failed (or cancelled) attempts, a batch from one worker and one queue: schedule a retry,
  or finish the job dead-lettered / failed / cancelled.

  KEYS[1] active ZSET    KEYS[2] retry ZSET (score = due time)    KEYS[3] queue stats HASH
  KEYS[4] finished-jobs ring HASH (tput)    KEYS[5] flow HASH
  KEYS[6] wake LIST (a worker waiting at max_running is woken)
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3] result ttl ms
  ARGV[4] dead letter "1" | "0"      ARGV[5] errors kept per job
  ARGV[6..] groups of 5: id, epoch, error JSON, action, retry delay ms
          action: 'retry' (if attempts remain), 'dead' (no retry: Fatal, fatal_errors),
                  'cancel' (an operator's cancel reached the worker); a 'retry' of a job
                  whose cancel was requested ends it cancelled instead

  Returns: one verdict per job: 'RETRY' | 'DEAD' | 'FAILED' | 'CANCELLED' | 'STALE' |
  'ALREADY_DONE'.
  Checks before the first write: the argument layout, numbers and actions, the declared keys'
  types, and for every job its record, error list, unique key and the keys of its own queue
  (dead set, stats, wake list); an error reply means nothing was written.
  Invariant: only the current owner at the current epoch settles an attempt; the error is kept
  (the job's last error plus a bounded history); attempts are never exceeded.
  Retry-safe: the settled operation is recorded with owner and epoch, so a repeat answers
  ALREADY_DONE; a later claim bumps the epoch and turns any stale call into STALE.
]]
-- #include common
-- #include runs
-- #include add_job
-- #include groups

local ACTIONS = { retry = true, dead = true, cancel = true }
check_groups(5, 5, 'id, epoch, error, action, delay')
local worker, dead_letter = ARGV[2], ARGV[4]
local ttl_ms, keep = check_num(3, 'result ttl ms'), check_num(5, 'errors kept')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'hash')
check_type(KEYS[4], 'hash')
check_type(KEYS[5], 'hash')
check_type(KEYS[6], 'list')
for i = 6, #ARGV, 5 do
  if not ACTIONS[ARGV[i + 3]] then refuse('unknown action ' .. ARGV[i + 3]) end
  check_num(i + 4, 'retry delay ms')
  local jk = check_job(ARGV[i])
  local queue = rcall('HGET', jk, 'queue')
  if queue then check_queue(queue) end
end

local now = now_ms()
local out = {}
local finished = 0
local freed = false
for i = 6, #ARGV, 5 do
  local id, epoch, err, action, delay = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    tonumber(ARGV[i + 4])
  local jk = job_key(id)
  local _, verdict = check_owner(jk, epoch, worker, 'fail')
  if verdict then
    out[#out + 1] = verdict
  else
    local ek = errors_key(id)
    drop_staging(jk, id)
    freed = true
    rcall('ZREM', KEYS[1], id)
    rcall('HSET', jk, 'error', err, 'settled', 'fail')
    rcall('LPUSH', ek, err)
    rcall('LTRIM', ek, 0, keep - 1)
    local f = rcall('HMGET', jk, 'attempts', 'max_attempts', 'queue', 'cancel_requested')
    local queue = f[3]
    -- An operator cancelled it while it ran: a retry would only run it again, so it ends here.
    if action == 'cancel' or (action == 'retry' and f[4] == '1') then
      release_unique(jk, id)
      rcall('HSET', jk, 'status', 'cancelled', 'finished_at', now)
      expire_job(jk, id, ttl_ms)
      rcall('HINCRBY', KEYS[3], 'cancelled', 1)
      run_job_ended(jk, 'cancelled', now, ttl_ms)
      group_job_ended(jk, id, 'cancelled', now, ttl_ms)
      out[#out + 1] = 'CANCELLED'
    elseif action == 'retry' and tonumber(f[1]) < tonumber(f[2]) then
      local due = now + delay
      rcall('HSET', jk, 'status', 'retrying', 'retry_at', due)
      rcall('ZADD', KEYS[2], due, id)
      rcall('HINCRBY', KEYS[3], 'retried', 1)
      -- An idle worker learns the new due time from its next claim and sleeps exactly so long.
      wake(wake_key(queue))
      out[#out + 1] = 'RETRY'
    else
      local reason = action == 'dead' and 'fatal' or 'out of attempts'
      out[#out + 1] = finish_dead(jk, id, queue, now, dead_letter, ttl_ms, reason)
      run_job_ended(jk, string.lower(out[#out]), now, ttl_ms)
      group_job_ended(jk, id, string.lower(out[#out]), now, ttl_ms)
    end
    if out[#out] ~= 'RETRY' then finished = finished + 1 end
  end
end
count_finished(KEYS[4], now, finished)
if freed then slot_freed(KEYS[5], KEYS[6]) end
return out
