--[[
  Record a worker's heartbeat.

  KEYS[1] workers ZSET (worker id -> last beat, ms)     KEYS[2] this worker's record HASH
  KEYS[3] meta HASH
  ARGV[1] key prefix    ARGV[2] worker id    ARGV[3] record ttl ms
  ARGV[4] forget workers silent for this many ms     ARGV[5..] field, value pairs

  Returns: {server time (ms) of this beat, the pipeline's generation or ''} so that a worker
  whose slots are all busy still notices within one interval that Redis lost its data.
  Invariant: a live worker is listed in the index and has a record; a worker silent for a few
  intervals loses its record (TTL) and, later, its index entry (pruned here by any live worker).
  Readers judge liveness by the last beat against the interval, never by the key's presence
  alone, so one late beat does not make a worker flap.
  Checks before the first write: the numbers, field/value pairs, the three keys' types; an error
  reply means nothing was written.
  Retry-safe: a repeated beat writes the same record.
]]
-- #include common

check_groups(4, 2, 'field, value')
local ttl_ms, forget_ms = check_num(3, 'record ttl ms'), check_num(4, 'forget after ms')
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'hash')
local now = now_ms()
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
rcall('HSET', KEYS[2], 'last_beat', now, unpack(fields))
rcall('PEXPIRE', KEYS[2], ttl_ms)
rcall('ZADD', KEYS[1], now, ARGV[2])
rcall('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - forget_ms)
return { now, rcall('HGET', KEYS[3], 'generation') or '' }
