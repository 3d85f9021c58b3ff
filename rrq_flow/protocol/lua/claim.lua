--[[
  Claim up to N ready jobs of one queue for one worker.

  KEYS[1] meta HASH       KEYS[2] queue ZSET (score = ready time, ms)
  KEYS[3] retry ZSET (score = due time)    KEYS[4] active ZSET (score = lease deadline, ms)
  KEYS[5] wake LIST
  ARGV[1] key prefix      ARGV[2] generation the worker knows     ARGV[3] worker id
  ARGV[4] max jobs N      ARGV[5] lease ms      ARGV[6] hard lease ms (timeout + lock_extension)

  Returns: {'LOST', generation-or-''} when the pipeline's data is gone or replaced, else
  {'OK', now, next_due (ms, -1 if nothing waits), count, then per job:
   id, epoch, attempt, max_attempts, args, kwargs, enqueued_at, parent}
  Invariant: a job leaves the queue only together with entering `active`, with a new epoch and
  its owner and lease recorded. Nothing is held only by a key with a TTL: the active entry is
  what brings the job back if the worker dies or this reply is lost.
  Retry-safe: a repeat after a lost reply claims other jobs (or none); the jobs of the lost reply
  sit in `active` and return through the reaper when their lease runs out.
]]
-- #include common

local gen = rcall('HGET', KEYS[1], 'generation')
if gen ~= ARGV[2] then return { 'LOST', gen or '' } end

local worker, want = ARGV[3], tonumber(ARGV[4])
local lease_ms, hard_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()

-- Retries whose backoff is over become ready again (bounded work per call).
local due = rcall('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  -- Only a job still waiting for its retry moves; a stray entry (record gone or the job already
  -- settled elsewhere) is just dropped: an HSET here would create a phantom job record.
  local jk = job_key(due[i])
  if rcall('HGET', jk, 'status') == 'retrying' then
    rcall('ZADD', KEYS[2], due[i + 1], due[i])
    rcall('HSET', jk, 'status', 'queued')
  end
end
if #due > 0 then
  local members = {}
  for i = 1, #due, 2 do members[#members + 1] = due[i] end
  rcall('ZREM', KEYS[3], unpack(members))
end

local out = { 'OK', now, -1, 0 }
local count = 0
local rounds = 0
while count < want and rounds < 10 do
  rounds = rounds + 1
  local ids = rcall('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, want - count)
  if #ids == 0 then break end
  rcall('ZREM', KEYS[2], unpack(ids))
  for _, id in ipairs(ids) do
    local jk = job_key(id)
    local status = rcall('HGET', jk, 'status')
    -- A missing record (expired, purged) or a finished job is dropped, never blocks the rest.
    if status == 'queued' or status == 'scheduled' or status == 'retrying' then
      local epoch = rcall('HINCRBY', jk, 'epoch', 1)
      local attempt = rcall('HINCRBY', jk, 'attempts', 1)
      rcall('HINCRBY', jk, 'claims', 1)
      local lease = now + lease_ms
      rcall('HSET', jk, 'status', 'active', 'owner', worker, 'started_at', now, 'lease', lease,
        'hard_deadline', now + hard_ms, 'settled', '')
      rcall('ZADD', KEYS[4], lease, id)
      local f = rcall('HMGET', jk, 'max_attempts', 'args', 'kwargs', 'enqueued_at', 'parent')
      out[#out + 1] = id
      out[#out + 1] = epoch
      out[#out + 1] = attempt
      out[#out + 1] = f[1]
      out[#out + 1] = f[2]
      out[#out + 1] = f[3]
      out[#out + 1] = f[4]
      out[#out + 1] = f[5] or ''
      count = count + 1
    end
  end
end
out[4] = count

-- Earliest future work, so an idle worker knows how long it may block.
local head = rcall('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next_due = -1
if #head > 0 then
  next_due = tonumber(head[2])
  -- More ready jobs than this worker took: wake another worker.
  if next_due <= now then wake(KEYS[5]) end
end
local rhead = rcall('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #rhead > 0 and (next_due == -1 or tonumber(rhead[2]) < next_due) then
  next_due = tonumber(rhead[2])
end
out[3] = next_due
return out
