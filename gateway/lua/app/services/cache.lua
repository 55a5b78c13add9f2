-- Two-level cache: a per-worker LRU in front of a shared dict. On a miss only one
-- request per key loads from the origin (a lock), the rest wait and read what it
-- stored: no dog-pile on the backend when a hot key expires.
local lrucache = require("resty.lrucache")
local cjson = require("cjson.safe")
local config = require("app.config")
local lock = require("app.utils.lock")

local M = {}
local lru = assert(lrucache.new(config.cache.lru_items))
local shared = ngx.shared.gw_cache

-- Returns value, and where it came from: "lru", "shared" or "origin".
function M.get(key, load)
    local v = lru:get(key)
    if v ~= nil then
        return v, "lru"
    end
    local raw = shared:get(key)
    if raw then
        v = cjson.decode(raw)
        lru:set(key, v, config.cache.ttl)
        return v, "shared"
    end
    local ok, err = lock.acquire("cache:" .. key, config.cache.lock_timeout)
    if not ok then
        return nil, err
    end
    -- Someone may have loaded it while we waited for the lock.
    raw = shared:get(key)
    if raw then
        lock.release("cache:" .. key)
        v = cjson.decode(raw)
        lru:set(key, v, config.cache.ttl)
        return v, "shared"
    end
    v, err = load(key)
    if v ~= nil then
        shared:set(key, cjson.encode(v), config.cache.ttl)
        lru:set(key, v, config.cache.ttl)
    end
    lock.release("cache:" .. key)
    return v, err or "origin"
end

return M
