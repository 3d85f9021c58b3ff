--[[
  groups: fan-in accounting (queues with `join: true`), done in the same script as each branch's
  end, so a kill or restart between two scripts can neither run a join twice nor never.
  Needs common, runs and add_job.

  A fan-out whose items lead to a join opens group:<G> (G = the fan-out job's id). Every job of a
  branch carries the stack of groups it is in: job field `grp`, a JSON list of [G, branch index]
  pairs, innermost last. A group counts `pending` tokens: one per live job of its branches, plus one the
  opener holds until all its children exist. A job's end moves its token: to its `next` children
  (+1 each), to the join (a value arrives: +0), or nowhere (None result, dead, failed, cancelled:
  -1; those three are listed as failed). When pending reaches 0 the join job is created, with the
  values in branch order, and the group's keys are deleted.

  group:<G>          HASH  size, pending, arrived, failed, bytes, over (input too large), queue,
                           join_id, max_attempts, max_bytes, on_failure, outer (stack), run
  group:<G>:values   ZSET  score branch index, member "<10-digit arrival seq>:<value JSON>"
  group:<G>:failed   LIST  {"id", "state", "error"} of failed branch jobs (first FAILED_KEPT)
]]
local FAILED_KEPT = 1000

local function group_key(g) return PREFIX .. 'group:' .. g end

-- The stack of a job in no group: one table per call (no caller writes to a stack it is given).
local NO_GROUPS = {}

local function stack_decode(s)
  if not s or s == '' then return NO_GROUPS end
  return cjson.decode(s)
end

local function stack_encode(stack)
  if #stack == 0 then return '' end
  return cjson.encode(stack)
end

-- The stack without its innermost group, encoded.
local function stack_outer(stack)
  local outer = {}
  for i = 1, #stack - 1 do outer[i] = stack[i] end
  return stack_encode(outer)
end

local function stack_push(stack, g, index)
  local out = {}
  for i = 1, #stack do out[i] = stack[i] end
  out[#out + 1] = { g, index }
  return stack_encode(out)
end

local group_token -- forward: group_close and group_token call each other through nested groups

-- Record a terminal end of a job that belongs to a group (dead / failed / cancelled).
local function group_failed(stack, id, state, err, now, ttl_ms)
  if #stack == 0 then return end
  local gk = group_key(stack[#stack][1])
  if rcall('EXISTS', gk) == 0 then return end
  local n = rcall('HINCRBY', gk, 'failed', 1)
  if n <= FAILED_KEPT then
    rcall('RPUSH', gk .. ':failed',
      '{"id":' .. cjson.encode(id) .. ',"state":"' .. state .. '","error":' ..
      ((err and err ~= '') and err or 'null') .. '}')
  end
  group_token(stack, -1, now, ttl_ms)
end

-- Make the join job of a group: values in branch order, `group` field for current_job().group.
-- Dead-lettered at once when its input is too large or (join_on_failure: dead_letter) a branch
-- failed; that counts as the end of its own branch in the outer group.
local function create_join(g, info, values, failed_count, failed, now, ttl_ms)
  local gfield = '{"id":' .. cjson.encode(g) .. ',"size":' .. info.size .. ',"arrived":' ..
    info.arrived .. ',"failed_count":' .. failed_count .. ',"failed":[' ..
    table.concat(failed, ',') .. ']}'
  local queue, jid = info.queue, info.join_id
  local args = '[[' .. table.concat(values, ',') .. ']]'
  local message
  if info.over then
    args = '[[]]'
    message = 'join input of ' .. info.arrived .. ' value(s) is ' .. info.bytes ..
      ' bytes, over max_payload_bytes (' .. info.max_bytes .. ') of queue ' .. queue ..
      '; return references to stored data from the branches instead'
  elseif info.on_failure == 'dead_letter' and failed_count > 0 then
    local ids = {}
    for i, f in ipairs(failed) do
      if i > 20 then break end
      ids[#ids + 1] = cjson.decode(f).id
    end
    message = failed_count .. ' branch(es) of group ' .. g .. ' failed (join_on_failure: ' ..
      'dead_letter): ' .. table.concat(ids, ', ') .. (failed_count > #ids and ', ...' or '')
  end
  local _, verdict, ready = add_job(queue, jid, pack_args(args, '{}'), '', '', g,
    info.max_attempts, now, '', info.run)
  if verdict ~= 'new' then return end
  local jk = job_key(jid)
  rcall('HSET', jk, 'group', gfield)
  if info.outer ~= '' then rcall('HSET', jk, 'grp', info.outer) end
  if message then
    local err = cjson.encode({ type = 'JoinFailed', message = message, attempt = 0, at = now })
    rcall('ZREM', queue_key(queue), jid)
    rcall('HSET', jk, 'status', 'dead', 'finished_at', now, 'dead_reason', 'join', 'error', err)
    rcall('LPUSH', errors_key(jid), err)
    rcall('ZADD', PREFIX .. 'q:' .. queue .. ':dead', now, jid)
    rcall('HINCRBY', stats_key(queue), 'dead', 1)
    run_job_ended(jk, 'dead', now, ttl_ms)
    group_failed(stack_decode(info.outer), jid, 'dead', err, now, ttl_ms)
  elseif ready then
    wake(wake_key(queue))
  end
end

local function group_close(g, now, ttl_ms)
  local gk = group_key(g)
  local h = rcall('HMGET', gk, 'size', 'arrived', 'failed', 'bytes', 'over', 'queue', 'join_id',
    'max_attempts', 'max_bytes', 'on_failure', 'outer', 'run')
  local info = { size = h[1], arrived = h[2], bytes = h[4], over = h[5] == '1', queue = h[6],
    join_id = h[7], max_attempts = h[8], max_bytes = h[9], on_failure = h[10], outer = h[11] or '',
    run = h[12] or '' }
  local values = {}
  if not info.over then
    for i, member in ipairs(rcall('ZRANGE', gk .. ':values', 0, -1)) do
      values[i] = string.sub(member, 12)
    end
  end
  local failed = rcall('LRANGE', gk .. ':failed', 0, -1)
  rcall('DEL', gk, gk .. ':values', gk .. ':failed')
  create_join(g, info, values, tonumber(h[3]), failed, now, ttl_ms)
end

-- Move `delta` tokens in the innermost group of `stack`; close it when none are left.
group_token = function(stack, delta, now, ttl_ms)
  if #stack == 0 or delta == 0 then return end
  local g = stack[#stack][1]
  local gk = group_key(g)
  if rcall('EXISTS', gk) == 0 then return end
  if rcall('HINCRBY', gk, 'pending', delta) <= 0 then group_close(g, now, ttl_ms) end
end

-- Open group `g` (the fan-out job's id) of `size` items; spec is the join queue's settings.
-- The opener holds one token until its children exist (released by the caller).
local function group_open(g, spec, outer, run, now)
  local gk = group_key(g)
  rcall('HSET', gk, 'size', spec.size, 'pending', 1, 'arrived', 0, 'failed', 0, 'bytes', 0,
    'over', 0, 'queue', spec.queue, 'join_id', spec.join_id, 'max_attempts', spec.max_attempts,
    'max_bytes', spec.max_bytes, 'on_failure', spec.on_failure, 'outer', outer, 'run', run)
end

-- A value reached a join queue. In a group: kept (while the group's input stays under the join
-- queue's max bytes). Outside any group (or one already closed): a group of one, joined now.
local function group_arrive(stack, value, queue, child_id, max_attempts, run, parent, now, ttl_ms)
  local gk = #stack > 0 and group_key(stack[#stack][1]) or nil
  if not gk or rcall('EXISTS', gk) == 0 then
    local info = { size = 1, arrived = 1, bytes = #value, over = false, queue = queue,
      join_id = child_id, max_attempts = max_attempts, max_bytes = 0, on_failure = 'run',
      outer = #stack > 0 and stack_outer(stack) or '', run = run }
    create_join(parent, info, { value }, 0, {}, now, ttl_ms)
    return
  end
  local n = rcall('HINCRBY', gk, 'arrived', 1)
  if rcall('HGET', gk, 'over') == '1' then return end
  local bytes = rcall('HINCRBY', gk, 'bytes', #value + 1)
  if bytes + 5 > tonumber(rcall('HGET', gk, 'max_bytes')) then
    rcall('HSET', gk, 'over', 1)
    rcall('DEL', gk .. ':values')
    return
  end
  rcall('ZADD', gk .. ':values', stack[#stack][2], string.format('%010d', n) .. ':' .. value)
end

-- A job that belongs to a group ended dead / failed / cancelled (fail, reap, release, cancel).
local function group_job_ended(jk, id, state, now, ttl_ms)
  local f = rcall('HMGET', jk, 'grp', 'error')
  if not f[1] or f[1] == '' then return end
  group_failed(stack_decode(f[1]), id, state, f[2], now, ttl_ms)
end
