--[[
  Create the next chunk of an expanding parent's children (step 3 of a fan-out); the last chunk
  makes the parent done. Any worker may call it: the parent's own worker right after its
  completion, or any worker taking over a parent whose expansion made no progress for a while.

  KEYS[1] expanding ZSET of the parent's queue (score = time of its last progress, ms)
  KEYS[2] that queue's stats HASH     KEYS[3] its finished-jobs ring HASH (tput)
  ARGV[1] key prefix     ARGV[2] parent id, or '' to take over the parent whose last progress is
  oldest, if that was at least ARGV[5] ms ago
  ARGV[3] max children this call      ARGV[4] result ttl ms      ARGV[5] takeover idle ms
  ARGV[6] keep args "1" | "0" (the queue's keep_args: "0" deletes the done parent's arguments)

  Returns: {'NONE'} (nothing to take over, or the parent is not expanding: a stray entry is
  dropped) | {'MORE', parent id, created} | {'DONE', parent id, created}.
  Checks before the first write: the numbers, the declared keys' types, the parent's record,
  error list, child index, unique key and staging list, the keys of the group it opened (if
  any: group:<id>, its values and failed lists, its join job's keys), and every key each child
  of this chunk would touch (check_add).
  Invariant: a chunk leaves the staging list in the same step as its children exist and are
  appended to the child index and counted in the parent's `children`, with their group stack
  (`grp`) and group tokens (a value for a join queue is kept in the group); the parent becomes
  done (result TTL, unique key released, counted done, its group token released: a group it
  opened may close only here) in the same step as its last child is created.
  So a crash between chunks neither loses nor duplicates a child.
  Retry-safe: a repeat creates the next chunk (or answers NONE / DONE-less NONE once done).
]]
-- #include common
-- #include runs
-- #include add_job
-- #include groups

local id = ARGV[2]
local max_children, ttl_ms = check_num(3, 'max children'), check_num(4, 'result ttl ms')
local idle_ms = check_num(5, 'takeover idle ms')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'hash')
local now = now_ms()
if id == '' then
  local oldest = rcall('ZRANGEBYSCORE', KEYS[1], '-inf', now - idle_ms, 'LIMIT', 0, 1)
  if #oldest == 0 then return { 'NONE' } end
  id = oldest[1]
end
local jk = check_job(id)
local f = rcall('HMGET', jk, 'status', 'epoch', 'priority', 'run', 'grp', 'group_join')
local parent_prio, run, stack = f[3] or '0', f[4] or '', stack_decode(f[5])
local opened = f[6] ~= false and f[6] ~= nil and f[6] ~= ''
if #stack > 0 then check_type(group_key(stack[#stack][1]), 'hash') end
if f[1] ~= 'expanding' then
  rcall('ZREM', KEYS[1], id)
  return { 'NONE' }
end
local fk = fanout_key(id, f[2])
check_type(fk, 'list')
local gk = group_key(id)
if opened then
  -- The group this parent opened at its commit: its values and, after the last chunk, its join.
  check_type(gk, 'hash')
  check_type(gk .. ':values', 'zset')
  check_type(gk .. ':failed', 'list')
  local g = rcall('HMGET', gk, 'queue', 'join_id', 'max_attempts')
  if g[1] then check_add(g[1], g[2], '', '', g[3], '') end
end
local entries = rcall('LRANGE', fk, 0, max_children - 1)
local parsed = {}
for n, entry in ipairs(entries) do
  local c = split_child(entry)
  if not c then refuse('malformed staged child ' .. n .. ' of ' .. fk) end
  if c[6] == '' then c[6] = parent_prio end
  if c[7] ~= 'next' and c[7] ~= 'join' and c[7] ~= 'out' then
    refuse('staged child kind ' .. c[7])
  end
  if not tonumber(c[8]) then refuse('staged child branch index ' .. c[8]) end
  check_add(c[1], c[2], c[4], c[5], c[3], c[6])
  parsed[n] = c
end

rcall('LTRIM', fk, #entries, -1)
local ids, woken = {}, {}
local tokens = 0 -- next-stage children carry the parent's branch on (in the group it opened)
for _, c in ipairs(parsed) do
  -- As in complete.lua: a child of a group-opening parent is branch c[8] of group <id>.
  local cstack = stack
  if opened and c[7] ~= 'out' then
    cstack = cjson.decode(stack_push(stack, id, tonumber(c[8])))
  end
  if c[7] == 'join' then
    group_arrive(cstack, c[9], c[1], c[2], c[3], run, id, now, ttl_ms)
  else
    local cid, verdict = add_job(c[1], c[2], pack_args(c[9], c[10]), c[4], c[5], id, c[3], now,
      c[6], run)
    ids[#ids + 1] = cid
    if c[7] == 'next' and verdict == 'new' then
      if #cstack > 0 then rcall('HSET', job_key(cid), 'grp', stack_encode(cstack)) end
      tokens = tokens + 1
    end
    if verdict == 'new' and not woken[c[1]] then
      wake(wake_key(c[1]))
      woken[c[1]] = true
    end
  end
end
push_all(children_key(id), ids)
rcall('HINCRBY', jk, 'children', #ids)
-- Tokens are handed over as the children appear (a child may end before the parent is done);
-- the parent's own token goes with its last chunk (an opener's token is the one holding its
-- group open, so that group cannot close before every child exists).
local inner = opened and { { id, 0 } } or stack
if tokens > 0 then group_token(inner, tokens, now, ttl_ms) end
if rcall('LLEN', fk) > 0 then
  rcall('ZADD', KEYS[1], now, id)
  return { 'MORE', id, #ids }
end
rcall('HSET', jk, 'status', 'done', 'finished_at', now)
rcall('ZREM', KEYS[1], id)
expire_job(jk, id, ttl_ms)
if ARGV[6] ~= '1' and rcall('HDEL', jk, 'packed_args') == 0 then
  rcall('DEL', args_key(id)) -- longer arguments, beside the record
end
release_unique(jk, id)
-- Last: a group closed here makes its join after every value above arrived. An opener hands
-- its own token in its outer group to the join of the group it opened (0 there).
group_token(inner, -1, now, ttl_ms)
run_job_ended(jk, 'done', now, ttl_ms)
rcall('HINCRBY', KEYS[2], 'done', 1)
count_finished(KEYS[3], now, 1)
return { 'DONE', id, #ids }
