-- Product catalogue backed by the upstream service, fronted by the cache.
local cache = require("app.utils.cache")
local config = require("app.config")
local json = require("app.utils.json")

local ngx = ngx

local M = {}

-- Runs only on a cache miss, under the dog-pile lock.
local function load_from_backend(id)
    local res = ngx.location.capture("/_backend/products/" .. id, {
        args = { delay_ms = config.product_load_delay_ms },
    })
    if res.status == 404 then
        return nil, "not found"
    end
    if res.status ~= 200 then
        return nil, "backend status " .. res.status
    end
    local product, err = json.decode(res.body)
    if not product then
        return nil, "backend body: " .. err
    end
    return product
end

-- Returns product, cache layer or nil, err.
function M.get(id)
    return cache.get("product:" .. id, load_from_backend, id)
end

return M
