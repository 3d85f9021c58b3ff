--[[
  Stage a chunk of a big fan-out's children under the parent's lease (step 1 of a fan-out).

  KEYS[1] active ZSET of the parent's queue
  ARGV[1] key prefix     ARGV[2] worker id     ARGV[3] parent id     ARGV[4] parent epoch
  ARGV[5] offset: how many children this attempt staged before this call
  ARGV[6] lease ms (the lease is moved to now + lease ms: staging proves the owner is alive)
  ARGV[7..] the children, one string each: queue, id, max attempts, when, unique key, priority
          ('' : the parent's), args JSON, kwargs JSON joined by "\0" (JSON text and valid ids
          never contain a NUL)

  Returns: 'OK' (appended) | 'ALREADY_DONE' (this chunk is already there: a repeat after a lost
  reply) | 'STALE' (the caller no longer owns the attempt: nothing written).
  Checks before the first write: the numbers, the active ZSET's, the parent record's and the
  staging list's types, and that the list holds exactly `offset` entries (else the caller
  skipped or repeated a chunk: refused).
  Invariant: the staging list `fanout:<epoch>:<id>` is written only by the owner of that epoch,
  in order, each chunk once; release, fail and reap of the attempt delete it, so an attempt
  that does not commit leaves nothing behind, and a stale owner (fenced) cannot add to it.
  Retry-safe: see ALREADY_DONE.
]]
-- #include common

local worker, id, epoch = ARGV[2], ARGV[3], ARGV[4]
local offset, lease_ms = check_num(5, 'offset'), check_num(6, 'lease ms')
local count = #ARGV - 6
check_type(KEYS[1], 'zset')
local jk = check_job(id)
local _, verdict = check_owner(jk, epoch, worker, 'complete')
if verdict then return verdict end
local fk = fanout_key(id, epoch)
check_type(fk, 'list')
local have = rcall('LLEN', fk)
if have == offset + count and count > 0 then return 'ALREADY_DONE' end
if have ~= offset then
  refuse('staging ' .. fk .. ' holds ' .. have .. ' children, the caller says ' .. offset)
end

local items = {}
for i = 7, #ARGV do items[#items + 1] = ARGV[i] end
push_all(fk, items)
local lease = now_ms() + lease_ms
rcall('HSET', jk, 'lease', lease)
rcall('ZADD', KEYS[1], 'XX', lease, id)
return 'OK'
