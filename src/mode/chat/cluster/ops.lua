-- sockline's one script: every change a node makes to the cluster's state
-- runs here, atomically, so that a room's order, its members and every
-- name change together or not at all. See cluster.rs for the design.
--
-- ARGV: node, run (this start of that node), count (the op's number in
-- that run; a say of several lines: the last line's), a fresh epoch in
-- case there is none, stream length, op, then the op's own arguments.
--
-- Keys, all under "sockline:": epoch; offsets (hash room -> last offset);
-- stream:ROOM (capped, entry id "OFFSET-1", field m); room:ROOM (channel);
-- node:NODE (channel: private messages); members (hash lower-case name ->
-- "node\tfrom\tname\troom"); in:ROOM (set of names); counts (hash room ->
-- members); nodes (hash node -> "run\tms of last beat"); sent (hash node ->
-- "run\tcount\tresult" of its last op); users (the last default user-N).

local P = 'sockline:'
local node, run, count, fresh, length, op = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local DEAD = tonumber(ARGV[7])

local function split(s)
  local fields = {}
  for field in string.gmatch(s, '([^\t]*)\t?') do
    table.insert(fields, field)
  end
  return fields
end

-- An op retried after its reply was lost: the answer it had, not a second run.
-- (sent is "run\tcount\tresult"; read in place, as every op does this.)
local done = 0 -- the number of this run's last op that ran
if op ~= 'who' and op ~= 'rooms' then
  local sent = redis.call('HGET', P .. 'sent', node)
  if sent then
    local a = string.find(sent, '\t', 1, true)
    local b = a and string.find(sent, '\t', a + 1, true)
    if b and string.sub(sent, 1, a - 1) == run then
      done = tonumber(string.sub(sent, a + 1, b - 1)) or 0
      if done >= count then
        return string.sub(sent, b + 1)
      end
    end
  end
end

local epoch = redis.call('GET', P .. 'epoch')
if not epoch then
  epoch = fresh
  redis.call('SET', P .. 'epoch', epoch)
end

-- Gives the message its place in the room's order: the next offset, the
-- capped stream (history, repairs), the channel.
local function order(room, sender, from, kind, payload)
  -- As an integer's digits, once (a Lua number is printed as a float each time).
  local offset = string.format('%d', redis.call('HINCRBY', P .. 'offsets', room, '1'))
  local m = epoch .. '\t' .. offset .. '\t' .. sender .. '\t' .. from .. '\t' .. kind .. '\t' .. payload
  redis.call('XADD', P .. 'stream:' .. room, 'MAXLEN', '~', length, offset .. '-1', 'm', m)
  redis.call('PUBLISH', P .. 'room:' .. room, m)
end

-- The op nearly every call is: done before the other ops' helpers are made.
if op == 'say' then
  -- room, from, kind, payload; again for each further line. The lines are
  -- numbered up to count, one each: those that ran are not run again, and
  -- if one fails, those before it are recorded as run.
  local n = count - (#ARGV - 7) / 4
  for i = 8, #ARGV, 4 do
    n = n + 1
    if n > done then
      local ok, err = pcall(order, ARGV[i], node, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
      if not ok then
        if n - 1 > done then
          redis.call('HSET', P .. 'sent', node, run .. '\t' .. string.format('%d', n - 1) .. '\t')
        end
        error(err)
      end
    end
  end
  redis.call('HSET', P .. 'sent', node, run .. '\t' .. ARGV[3] .. '\t')
  return ''
end

local function register(name, room, from)
  redis.call('HSET', P .. 'members', string.lower(name), node .. '\t' .. from .. '\t' .. name .. '\t' .. room)
  redis.call('SADD', P .. 'in:' .. room, name)
  redis.call('HINCRBY', P .. 'counts', room, 1)
end

-- The member of that name, as {node, from, name, room}, or nil.
local function member(name)
  local v = redis.call('HGET', P .. 'members', string.lower(name))
  if v then return split(v) end
  return nil
end

local function unregister(m)
  redis.call('HDEL', P .. 'members', string.lower(m[3]))
  redis.call('SREM', P .. 'in:' .. m[4], m[3])
  if redis.call('HINCRBY', P .. 'counts', m[4], -1) <= 0 then
    redis.call('HDEL', P .. 'counts', m[4])
  end
end

local function mine(m, from)
  return m and m[1] == node and m[2] == from
end

-- Every member of node `gone`, out: each room told why.
local function forget(gone, why)
  local all = redis.call('HGETALL', P .. 'members')
  for i = 2, #all, 2 do
    local m = split(all[i])
    if m[1] == gone then
      unregister(m)
      order(m[4], gone, m[2], 'N', '* ' .. m[3] .. ' left (' .. why .. ')')
    end
  end
end

local result = ''
if op == 'enter' then
  -- room, from, name: the name it gets back (a fresh one if that was taken)
  local room, from, name = ARGV[8], ARGV[9], ARGV[10]
  local m = member(name)
  if mine(m, from) then
    return name
  end
  while m do
    name = 'user-' .. redis.call('INCR', P .. 'users')
    m = member(name)
  end
  register(name, room, from)
  order(room, node, from, 'N', '* ' .. name .. ' joined')
  result = name
elseif op == 'exit' then
  -- room, from, name, notice ('' for none)
  local m = member(ARGV[10])
  if mine(m, ARGV[9]) then
    unregister(m)
  end
  if ARGV[11] ~= '' then
    order(ARGV[8], node, ARGV[9], 'N', ARGV[11])
  end
elseif op == 'nick' then
  -- room, from, old, new: 'ok' or 'taken'
  local room, from, old, new = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
  local taken = member(new)
  if taken and not mine(taken, from) then
    result = 'taken'
  else
    local m = member(old)
    if mine(m, from) then
      unregister(m)
    end
    register(new, room, from)
    if old ~= new then
      order(room, node, from, 'N', '* ' .. old .. ' is now ' .. new)
    end
    result = 'ok'
  end
elseif op == 'who' then
  return redis.call('SMEMBERS', P .. 'in:' .. ARGV[8])
elseif op == 'rooms' then
  return redis.call('HGETALL', P .. 'counts')
elseif op == 'msg' then
  -- to, line: 'none' (no such member), 'lost' (its node is not listening) or 'ok'
  local m = member(ARGV[8])
  if not m then
    result = 'none'
  elseif redis.call('PUBLISH', P .. 'node:' .. m[1], m[2] .. '\t' .. ARGV[9]) == 0 then
    result = 'lost'
  else
    result = 'ok'
  end
elseif op == 'users' then
  -- n: the last of n fresh user-N numbers
  return redis.call('INCRBY', P .. 'users', ARGV[8])
elseif op == 'beat' then
  -- 'new' when this run of the node was not known (it starts, it was
  -- taken for dead, or Redis lost its data): its members must enter again.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local known = redis.call('HGET', P .. 'nodes', node)
  redis.call('HSET', P .. 'nodes', node, run .. '\t' .. now)
  result = 'known'
  if not known then
    result = 'new'
  else
    local was = split(known)
    if was[1] ~= run then
      -- An earlier run of this node that died: its members are gone.
      forget(node, 'server restarted')
      result = 'new'
    elseif now - tonumber(was[2]) < DEAD / 2 then
      -- Judge the others only when this node itself kept beating (not
      -- right after Redis or this node was away).
      local nodes = redis.call('HGETALL', P .. 'nodes')
      for i = 1, #nodes, 2 do
        local at = tonumber(split(nodes[i + 1])[2])
        if nodes[i] ~= node and now - at > DEAD then
          redis.call('HDEL', P .. 'nodes', nodes[i])
          redis.call('HDEL', P .. 'sent', nodes[i])
          forget(nodes[i], 'server lost')
        end
      end
    end
  end
elseif op == 'depart' then
  -- why: this node stops; its members leave every room.
  forget(node, ARGV[8])
  redis.call('HDEL', P .. 'nodes', node)
else
  return redis.error_reply('sockline: unknown op ' .. op)
end

redis.call('HSET', P .. 'sent', node, run .. '\t' .. ARGV[3] .. '\t' .. result)
return result
