--[[
  Record successful attempts (a batch from one worker and one queue) and hand off their results.

  KEYS[1] active ZSET    KEYS[2] queue stats HASH    KEYS[3] finished-jobs ring HASH (tput)
  KEYS[4] flow HASH      KEYS[5] wake LIST (a worker waiting at max_running is woken)
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3] result ttl ms
  ARGV[4] number of jobs N, then per job:
          id, epoch, result JSON, number of children C, then C groups of 8:
          child queue, child id, args JSON, kwargs JSON, max attempts, when, unique key,
          priority ('' : the parent's)

  Returns: one verdict per job: 'OK' | 'STALE' (someone else owns it now: nothing changed) |
  'ALREADY_DONE' (this owner and epoch completed it before; a retry after a lost reply).
  Invariant: a job becomes done only by its current owner at its current epoch, and in the same
  step its children exist (ids derived by the caller from parent id and position, so a repeated
  completion cannot duplicate them) and its unique key is released.
]]
-- #include common
-- #include add_job

local worker, ttl_ms = ARGV[2], tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local now = now_ms()
local out = {}
local done = 0
local p = 5
for _ = 1, n do
  local id, epoch, result, nchildren = ARGV[p], ARGV[p + 1], ARGV[p + 2], tonumber(ARGV[p + 3])
  local cbase = p + 4
  p = cbase + nchildren * 8
  local jk = job_key(id)
  local _, verdict = check_owner(jk, epoch, worker, 'complete')
  if verdict then
    out[#out + 1] = verdict
  else
    local children = {}
    local woken = {}
    local parent_prio = nchildren > 0 and (rcall('HGET', jk, 'priority') or '0') or '0'
    for c = 0, nchildren - 1 do
      local b = cbase + c * 8
      local cqueue = ARGV[b]
      local cprio = ARGV[b + 7]
      if cprio == '' then cprio = parent_prio end
      local cid, cverdict, ready = add_job(cqueue, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3],
        ARGV[b + 5], ARGV[b + 6], id, ARGV[b + 4], now, cprio)
      children[#children + 1] = cid
      if cverdict == 'new' and not woken[cqueue] then
        wake(wake_key(cqueue))
        woken[cqueue] = true
      end
    end
    rcall('HSET', jk, 'status', 'done', 'result', result, 'finished_at', now, 'settled', 'complete',
      'children', #children > 0 and cjson.encode(children) or '[]')
    rcall('ZREM', KEYS[1], id)
    rcall('PEXPIRE', jk, ttl_ms)
    rcall('PEXPIRE', jk .. ':errors', ttl_ms)
    release_unique(jk, id)
    done = done + 1
    out[#out + 1] = 'OK'
  end
end
if done > 0 then
  rcall('HINCRBY', KEYS[2], 'done', done)
  count_finished(KEYS[3], now, done)
  slot_freed(KEYS[4], KEYS[5])
end
return out
