--[[
  Is there any work left in these queues? Burst mode asks before it stops.

  KEYS    per queue, 3 keys: queue ZSET, retry ZSET, active ZSET
  ARGV[1] key prefix

  Returns: flat array per queue: jobs ready now, jobs in retry backoff, active jobs. Jobs a
  producer deferred into the future do not count (they are not part of this batch).
  Invariant: read-only; one atomic snapshot across all the queues, so a job moving from one
  stage to the next (created in the same script that completes its parent) is never missed.
]]
-- #include common

local now = now_ms()
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = rcall('ZCOUNT', KEYS[i], '-inf', now)
  out[#out + 1] = rcall('ZCARD', KEYS[i + 1])
  out[#out + 1] = rcall('ZCARD', KEYS[i + 2])
end
return out
