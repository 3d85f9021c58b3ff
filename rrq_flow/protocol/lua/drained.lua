--[[
  Is there any work left in these queues? Burst mode asks before it stops.

  KEYS    per queue, 4 keys: queue ZSET (with its priority levels), retry ZSET, active ZSET,
          expanding ZSET (parents whose fan-out is being created count as active)
  ARGV[1] key prefix     ARGV[2] '1': also the queue's total of queued and scheduled jobs

  Returns: flat array per queue: jobs ready now, jobs in retry backoff, active jobs (and with
  ARGV[2] '1' the total queued, deferred ones included). Jobs a
  producer deferred into the future do not count (they are not part of this batch).
  Checks: none needed, it writes nothing (a wrong-typed key is an error reply and no harm).
  Invariant: read-only; one atomic snapshot across all the queues, so a job moving from one
  stage to the next (created in the same script that completes its parent) is never missed.
]]
-- #include common

local now = now_ms()
local out = {}
for i = 1, #KEYS, 4 do
  local ready, total = 0, 0
  for _, level in ipairs(ready_levels(KEYS[i])) do
    ready = ready + rcall('ZCOUNT', level, '-inf', now)
    if ARGV[2] == '1' then total = total + rcall('ZCARD', level) end
  end
  out[#out + 1] = ready
  out[#out + 1] = rcall('ZCARD', KEYS[i + 1])
  out[#out + 1] = rcall('ZCARD', KEYS[i + 2]) + rcall('ZCARD', KEYS[i + 3])
  if ARGV[2] == '1' then out[#out + 1] = total end
end
return out
