--[[
  Renew the leases of a worker's running jobs (one call for all of a queue's due renewals).

  KEYS[1] active ZSET (score = lease deadline, ms)
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3] lease ms
  ARGV[4..] pairs: job id, epoch

  Returns: one verdict per job, in order: 'OK' (lease extended, capped at the hard deadline),
  'STALE' (fenced: reaped, re-claimed or finished elsewhere), 'DEADLINE' (start + timeout +
  lock_extension reached: no more renewals), 'CANCEL' (an operator cancelled the job).
  Checks before the first write: the arguments, the active ZSET's type and every job record's;
  an error reply means nothing was written.
  Invariant: only the current owner at the current epoch moves a lease, and never past the hard
  deadline. Retry-safe: renewing twice sets the same kind of deadline; nothing else changes.
]]
-- #include common

check_groups(3, 2, 'job id, epoch')
local worker, lease_ms = ARGV[2], check_num(3, 'lease ms')
check_type(KEYS[1], 'zset')
for i = 4, #ARGV, 2 do check_type(job_key(ARGV[i]), 'hash') end
local now = now_ms()
local out = {}
for i = 4, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local jk = job_key(id)
  local f = rcall('HMGET', jk, 'status', 'epoch', 'owner', 'hard_deadline', 'cancel_requested')
  if f[1] ~= 'active' or f[2] ~= epoch or f[3] ~= worker then
    out[#out + 1] = 'STALE'
  elseif f[5] == '1' then
    out[#out + 1] = 'CANCEL'
  else
    local hard = tonumber(f[4])
    if now >= hard then
      out[#out + 1] = 'DEADLINE'
    else
      local lease = math.min(now + lease_ms, hard)
      rcall('HSET', jk, 'lease', lease)
      rcall('ZADD', KEYS[1], 'XX', lease, id)
      out[#out + 1] = 'OK'
    end
  end
end
return out
