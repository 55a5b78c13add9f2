-- Two-level cache: a per-worker LRU in front of a shared dict, with a lock so
-- that one request per key (across all workers) runs the loader on a miss.
local lrucache = require("resty.lrucache")
local config = require("app.config")
local json = require("app.utils.json")
local lock = require("app.utils.lock")

local ngx = ngx
local conf = config.cache

local M = {}

local l1 -- created per worker: lrucache is not shareable across processes
local l2 = ngx.shared.cache

function M.init_worker()
    local err
    l1, err = lrucache.new(conf.l1_size)
    if not l1 then
        error("lrucache: " .. tostring(err))
    end
end

local function from_l2(key)
    local raw = l2:get(key)
    if raw == nil then
        return nil
    end
    local value = json.decode(raw)
    if value ~= nil then
        l1:set(key, value, conf.l1_ttl)
    end
    return value
end

-- Returns value, layer ("L1", "L2", "MISS") or nil, err.
-- loader(arg) returns value or nil, err; values must be JSON-encodable.
function M.get(key, loader, arg)
    local value = l1:get(key)
    if value ~= nil then
        return value, "L1"
    end
    value = from_l2(key)
    if value ~= nil then
        return value, "L2"
    end

    local handle, err = lock.acquire("locks", "cache:" .. key, conf.lock_timeout, conf.lock_exptime)
    if not handle then
        return nil, "cache lock: " .. err
    end
    -- Whoever held the lock before us has probably filled L2 already.
    value = from_l2(key)
    if value ~= nil then
        lock.release(handle)
        return value, "L2"
    end

    local ok, loaded, load_err = pcall(loader, arg)
    if ok and loaded ~= nil then
        l2:set(key, json.encode(loaded), conf.l2_ttl)
        l1:set(key, loaded, conf.l1_ttl)
    end
    lock.release(handle)
    if not ok then
        return nil, loaded
    end
    if loaded == nil then
        return nil, load_err
    end
    return loaded, "MISS"
end

return M
