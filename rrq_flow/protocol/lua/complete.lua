--[[
  Record successful attempts (a batch from one worker and one queue) and hand off their results.

  KEYS[1] active ZSET    KEYS[2] queue stats HASH    KEYS[3] finished-jobs ring HASH (tput)
  KEYS[4] flow HASH      KEYS[5] wake LIST (a worker waiting at max_running is woken)
  KEYS[6] expanding ZSET (parents whose staged children are being created)
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3] result ttl ms
  ARGV[4] keep args "1" | "0" (the queue's keep_args: "0" deletes a done job's args:<id>)
  ARGV[5] number of jobs N, then per job:
          id, epoch, result JSON,
          group spec: "" or JSON {size, queue, join_id, max_attempts, max_bytes, on_failure} when
            this job is a fan-out whose items lead to a join (it opens group:<id>),
          staged count S (children stage.lua staged for this epoch; then C is 0: the job becomes
            `expanding` and opens its group, if any; expand.lua creates the children in chunks
            and its last chunk releases the opener's group token),
          number of children C, then C groups of 10:
          child queue, child id, args JSON, kwargs JSON, max attempts, when, unique key,
          priority ('' : the parent's),
          kind ('next' a next-stage job | 'join' a value for a join queue, args = the value JSON |
          'out' an outbox job), branch index (position of the fan-out item)

  A result longer than 64 bytes goes to result:<id> (with the record's TTL) instead of the
  record's `result` field, so the record stays in Redis' compact listpack encoding.
  Returns: one verdict per job: 'OK' | 'STALE' (someone else owns it now: nothing changed) |
  'ALREADY_DONE' (this owner and epoch completed it before; a retry after a lost reply).
  Checks before the first write: the argument layout and numbers, the declared keys' types, and
  for every job its record (read once, with everything the write needs), the error list and
  child index it will expire or fill, its unique key, and every key each child (and the join job
  of a group it opens) would touch (check_add); an error reply means nothing was written.
  A child carries its parent's run id (and is counted in that run) and its group stack
  (fragments/groups.lua); a value for a join queue is kept in its group, and the group's join job
  is created in the same step as the end of its last branch.
  Invariant: a job becomes done only by its current owner at its current epoch, and in the same
  step its children exist (ids derived by the caller from parent id and position, so a repeated
  completion cannot duplicate them), are listed in its child index `children:<id>` (the record
  keeps only their count), its group tokens move and its unique key is released.
]]
-- #include common
-- #include runs
-- #include add_job
-- #include groups

local worker, keep_args = ARGV[2], ARGV[4] == '1'
local ttl_ms, n = check_num(3, 'result ttl ms'), check_num(5, 'number of jobs')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'hash')
check_type(KEYS[4], 'hash')
check_type(KEYS[5], 'list')
check_type(KEYS[6], 'zset')
-- Per job (by position): its record's fields and the verdict they give.
local recs, verdicts = {}, {}
local p = 6
for j = 1, n do
  local id, epoch = ARGV[p], ARGV[p + 1]
  local staged, nchildren = check_num(p + 4, 'staged count'), check_num(p + 5, 'children')
  local f = check_hmget(job_key(id), 'status', 'epoch', 'owner', 'settled', 'unique_key', 'run',
    'grp', 'priority', 'claims', 'queue')
  local verdict = owner_verdict(f, epoch, worker, 'complete')
  recs[j], verdicts[j] = f, verdict or false
  if not verdict then
    if f[5] and f[5] ~= '' then check_type(unique_key(f[5]), 'string') end
    -- An earlier attempt may have left errors: they expire with the record.
    if tonumber(f[9] or '0') > 1 then check_type(errors_key(id), 'list') end
    if nchildren > 0 or staged > 0 then check_type(children_key(id), 'list') end
  end
  local gspec = ARGV[p + 3]
  if staged > 0 then
    if nchildren > 0 then
      refuse('job ' .. id .. ': staged children with inline ones')
    end
    if not verdict then
      local fk = fanout_key(id, epoch)
      check_type(fk, 'list')
      local have = rcall('LLEN', fk)
      if have ~= staged then
        refuse('job ' .. id .. ': ' .. fk .. ' holds ' .. have .. ' staged, not ' .. staged)
      end
    end
  end
  if gspec ~= '' then
    local ok, spec = pcall(cjson.decode, gspec)
    if not ok or type(spec) ~= 'table' or not spec.queue or not spec.join_id then
      refuse('bad group spec for job ' .. id)
    end
    check_add(spec.queue, spec.join_id, '', '', spec.max_attempts, '')
    check_type(group_key(id), 'hash')
  end
  local parent_prio = f[8] or '0'
  for c = 0, nchildren - 1 do
    local b = p + 6 + c * 10
    if b + 9 > #ARGV then refuse('arguments end inside the children of job ' .. id) end
    local cprio = ARGV[b + 7]
    if cprio == '' then cprio = parent_prio end
    check_add(ARGV[b], ARGV[b + 1], ARGV[b + 5], ARGV[b + 6], ARGV[b + 4], cprio)
  end
  p = p + 6 + nchildren * 10
end
if p ~= #ARGV + 1 then refuse('expected ' .. (p - 1) .. ' arguments, got ' .. #ARGV) end

local now = now_ms()
local now_s, ttl_s = num_str(now), ARGV[3] -- written per job: strings (see num_str)
local NO_JOBS = {} -- an empty list, never written to
local out = {}
local done, freed = 0, false
local settled = {} -- id -> epoch of the jobs this call completed (an id twice is completed once)
local left = {}    -- ids that leave `active`
local drop = {}    -- arguments of done jobs (keep_args off)
p = 6
for j = 1, n do
  local id, epoch, result, gspec = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3]
  local staged, nchildren = tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
  local cbase = p + 6
  p = cbase + nchildren * 10
  local jk = job_key(id)
  local f, verdict = recs[j], verdicts[j]
  if settled[id] then verdict = settled[id] == epoch and 'ALREADY_DONE' or 'STALE' end
  if verdict then
    out[#out + 1] = verdict
  elseif staged > 0 then
    -- A big fan-out: any worker's expand.lua now creates the staged children in chunks. The job
    -- keeps its group token and stays unfinished in its run until the last chunk. A group it
    -- opens opens now (the opener's token holds it open until that last chunk).
    if gspec ~= '' then
      local spec = cjson.decode(gspec)
      group_open(id, spec, stack_encode(stack_decode(f[7])), f[6] or '', now)
      rcall('HSET', jk, 'group_join', spec.join_id)
    end
    rcall('DEL', children_key(id))
    if #result > LONG_VALUE then
      rcall('SET', result_key(id), result) -- expires with the record, after the last chunk
      rcall('HSET', jk, 'status', 'expanding', 'settled', 'complete', 'children', 0,
        'fanout_total', staged)
    else
      rcall('HSET', jk, 'status', 'expanding', 'result', result, 'settled', 'complete',
        'children', 0, 'fanout_total', staged)
    end
    left[#left + 1] = id
    rcall('ZADD', KEYS[6], now_s, id)
    settled[id] = epoch
    freed = true
    out[#out + 1] = 'OK'
  else
    -- (No table is made for a job without children: most jobs, once each.)
    local children, woken = NO_JOBS, nil
    if nchildren > 0 then children, woken = {}, {} end
    local run, stack, parent_prio = f[6] or '', stack_decode(f[7]), f[8] or '0'
    local opened = gspec ~= ''
    if opened then
      local spec = cjson.decode(gspec)
      group_open(id, spec, stack_encode(stack), run, now)
      rcall('HSET', jk, 'group_join', spec.join_id)
    end
    local tokens = 0 -- jobs that carry this job's branch on in its own innermost group
    for c = 0, nchildren - 1 do
      local b = cbase + c * 10
      local cqueue, cid, kind, index = ARGV[b], ARGV[b + 1], ARGV[b + 8], tonumber(ARGV[b + 9])
      local cprio = ARGV[b + 7]
      if cprio == '' then cprio = parent_prio end
      local cstack = stack
      if opened and kind ~= 'out' then cstack = cjson.decode(stack_push(stack, id, index)) end
      if kind == 'join' then
        group_arrive(cstack, ARGV[b + 2], cqueue, cid, ARGV[b + 4], run, id, now, ttl_ms)
      else
        local cverdict
        cid, cverdict = add_job(cqueue, cid, pack_args(ARGV[b + 2], ARGV[b + 3]), ARGV[b + 5],
          ARGV[b + 6], id, ARGV[b + 4], now, cprio, run)
        children[#children + 1] = cid
        if kind == 'next' and cverdict == 'new' then
          if #cstack > 0 then rcall('HSET', job_key(cid), 'grp', stack_encode(cstack)) end
          if opened then group_token(cstack, 1, now, ttl_ms) else tokens = tokens + 1 end
        end
        if cverdict == 'new' and not woken[cqueue] then
          wake(wake_key(cqueue))
          woken[cqueue] = true
        end
      end
    end
    if #children > 0 then
      local ck = children_key(id)
      rcall('DEL', ck) -- an index left by an earlier attempt is rebuilt, never appended to twice
      push_all(ck, children)
      rcall('PEXPIRE', ck, ttl_s)
    end
    local long = #result > LONG_VALUE
    if long then rcall('SET', result_key(id), result, 'PX', ttl_s) end
    if long or #children > 0 then
      local fields = { 'status', 'done', 'finished_at', now_s, 'settled', 'complete' }
      if not long then
        fields[#fields + 1] = 'result'
        fields[#fields + 1] = result
      end
      if #children > 0 then
        fields[#fields + 1] = 'children'
        fields[#fields + 1] = #children
      end
      rcall('HSET', jk, unpack(fields))
    else -- the usual job: a short result, no children
      rcall('HSET', jk, 'status', 'done', 'finished_at', now_s, 'settled', 'complete', 'result',
        result)
    end
    left[#left + 1] = id
    rcall('PEXPIRE', jk, ttl_s)
    if tonumber(f[9] or '0') > 1 then rcall('PEXPIRE', errors_key(id), ttl_s) end
    if keep_args then
      rcall('PEXPIRE', args_key(id), ttl_s) -- arguments in the record expire with it
    elseif rcall('HDEL', jk, 'packed_args') == 0 then
      drop[#drop + 1] = args_key(id)
    end
    if f[5] and f[5] ~= '' then
      local uk = unique_key(f[5])
      if rcall('GET', uk) == id then rcall('DEL', uk) end
    end
    -- Tokens last: a group closed here makes its join after every value above arrived. An opener
    -- hands its own token to the join of the group it opened (that join continues its branch).
    if opened then
      group_token({ { id, 0 } }, -1, now, ttl_ms)
    else
      group_token(stack, tokens - 1, now, ttl_ms)
    end
    run_ended(run, f[10], 'done', now, ttl_ms)
    settled[id] = epoch
    done = done + 1
    out[#out + 1] = 'OK'
  end
end
call_chunked('ZREM', KEYS[1], left)
del_all(drop)
if done > 0 then
  rcall('HINCRBY', KEYS[2], 'done', done)
  count_finished(KEYS[3], now, done)
end
if done > 0 or freed then slot_freed(KEYS[4], KEYS[5]) end
return out
