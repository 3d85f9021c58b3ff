--[[
  Put interrupted jobs (worker shutdown) back to ready at once, without consuming an attempt.

  KEYS[1] queue ZSET     KEYS[2] active ZSET     KEYS[3] wake LIST     KEYS[4] queue stats HASH
  KEYS[5] finished-jobs ring HASH (tput)
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3] result ttl ms
  ARGV[4..] pairs: job id, epoch

  Returns: one verdict per job: 'OK' | 'CANCELLED' | 'STALE' | 'ALREADY_DONE'.
  Checks before the first write: the argument layout, the declared keys' types and every job's
  record, error list and unique key; an error reply means nothing was written.
  Invariant: only the current owner at the current epoch releases; the job goes back to its
  original place in the queue (its ready time) and its attempt is given back. A job whose cancel
  an operator requested is not run again: it ends cancelled here (terminal, recorded once).
  Retry-safe: a repeat finds the job settled by 'release' at the same epoch: ALREADY_DONE.
]]
-- #include common
-- #include runs
-- #include add_job
-- #include groups

check_groups(3, 2, 'job id, epoch')
local worker, ttl_ms = ARGV[2], check_num(3, 'result ttl ms')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'list')
check_type(KEYS[4], 'hash')
check_type(KEYS[5], 'hash')
for i = 4, #ARGV, 2 do check_job(ARGV[i]) end
local now = now_ms()
local out = {}
local released, cancelled = 0, 0
for i = 4, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local jk = job_key(id)
  local _, verdict = check_owner(jk, epoch, worker, 'release')
  if verdict then
    out[#out + 1] = verdict
  else
    rcall('ZREM', KEYS[2], id)
    drop_staging(jk, id)
    if rcall('HGET', jk, 'cancel_requested') == '1' then
      release_unique(jk, id)
      rcall('HSET', jk, 'status', 'cancelled', 'settled', 'release', 'finished_at', now)
      expire_job(jk, id, ttl_ms)
      run_job_ended(jk, 'cancelled', now, ttl_ms)
      group_job_ended(jk, id, 'cancelled', now, ttl_ms)
      cancelled = cancelled + 1
      out[#out + 1] = 'CANCELLED'
    else
      rcall('HINCRBY', jk, 'attempts', -1)
      rcall('HSET', jk, 'status', 'queued', 'settled', 'release')
      local back = rcall('HMGET', jk, 'ready_at', 'priority')
      add_ready(KEYS[1], back[2], back[1], id)
      released = released + 1
      out[#out + 1] = 'OK'
    end
  end
end
if released > 0 then
  wake(KEYS[3])
  rcall('HINCRBY', KEYS[4], 'released', released)
end
if cancelled > 0 then
  rcall('HINCRBY', KEYS[4], 'cancelled', cancelled)
  count_finished(KEYS[5], now, cancelled)
end
return out
