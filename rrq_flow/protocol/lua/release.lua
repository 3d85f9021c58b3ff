--[[
  Put interrupted jobs (worker shutdown) back to ready at once, without consuming an attempt.

  KEYS[1] queue ZSET     KEYS[2] active ZSET     KEYS[3] wake LIST     KEYS[4] queue stats HASH
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3..] pairs: job id, epoch

  Returns: one verdict per job: 'OK' | 'STALE' | 'ALREADY_DONE'.
  Invariant: only the current owner at the current epoch releases; the job goes back to its
  original place in the queue (its ready time) and its attempt is given back.
  Retry-safe: a repeat finds the job settled by 'release' at the same epoch: ALREADY_DONE.
]]
-- #include common

local worker = ARGV[2]
local out = {}
local released = 0
for i = 3, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local jk = job_key(id)
  local _, verdict = check_owner(jk, epoch, worker, 'release')
  if verdict then
    out[#out + 1] = verdict
  else
    rcall('HINCRBY', jk, 'attempts', -1)
    rcall('HSET', jk, 'status', 'queued', 'settled', 'release')
    rcall('ZREM', KEYS[2], id)
    rcall('ZADD', KEYS[1], rcall('HGET', jk, 'ready_at'), id)
    released = released + 1
    out[#out + 1] = 'OK'
  end
end
if released > 0 then
  wake(KEYS[3])
  rcall('HINCRBY', KEYS[4], 'released', released)
end
return out
