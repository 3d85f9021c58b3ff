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
  Checks before the first write: the argument layout and numbers, the declared keys' types, and
  for every job its record, error list, child index and unique key, and every key each child
  would touch (check_add); an error reply means nothing was written.
  Invariant: a job becomes done only by its current owner at its current epoch, and in the same
  step its children exist (ids derived by the caller from parent id and position, so a repeated
  completion cannot duplicate them), are listed in its child index `children:<id>` (the record
  keeps only their count) and its unique key is released.
]]
-- #include common
-- #include add_job

local worker = ARGV[2]
local ttl_ms, n = check_num(3, 'result ttl ms'), check_num(4, 'number of jobs')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'hash')
check_type(KEYS[4], 'hash')
check_type(KEYS[5], 'list')
local p = 5
for _ = 1, n do
  local nchildren = check_num(p + 3, 'number of children')
  local jk = check_job(ARGV[p])
  local parent_prio = rcall('HGET', jk, 'priority') or '0'
  for c = 0, nchildren - 1 do
    local b = p + 4 + c * 8
    if b + 7 > #ARGV then refuse('arguments end inside the children of job ' .. ARGV[p]) end
    local cprio = ARGV[b + 7]
    if cprio == '' then cprio = parent_prio end
    check_add(ARGV[b], ARGV[b + 1], ARGV[b + 5], ARGV[b + 6], ARGV[b + 4], cprio)
  end
  p = p + 4 + nchildren * 8
end
if p ~= #ARGV + 1 then refuse('expected ' .. (p - 1) .. ' arguments, got ' .. #ARGV) end

local now = now_ms()
local out = {}
local done = 0
p = 5
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
      local cid, cverdict = add_job(cqueue, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3],
        ARGV[b + 5], ARGV[b + 6], id, ARGV[b + 4], now, cprio)
      children[#children + 1] = cid
      if cverdict == 'new' and not woken[cqueue] then
        wake(wake_key(cqueue))
        woken[cqueue] = true
      end
    end
    local ck = children_key(id)
    rcall('DEL', ck) -- an index left by an earlier attempt is rebuilt, never appended to twice
    push_all(ck, children)
    rcall('HSET', jk, 'status', 'done', 'result', result, 'finished_at', now, 'settled', 'complete',
      'children', #children)
    rcall('ZREM', KEYS[1], id)
    expire_job(jk, id, ttl_ms)
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
