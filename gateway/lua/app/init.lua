-- Entry points for every nginx phase. nginx.conf calls only these, so the
-- order of middleware is visible in one place.
local auth = require("app.middleware.auth")
local cache = require("app.utils.cache")
local cors = require("app.middleware.cors")
local metrics = require("app.services.metrics")
local rate_limit = require("app.middleware.rate_limit")
local request_id = require("app.middleware.request_id")

local ngx = ngx

local M = {}

-- Loaded in the master (init_by_lua) so workers inherit compiled bytecode
-- and a failure to load stops nginx at startup rather than on first request.
local PRELOAD = {
    "app.config",
    "app.controllers.alloc",
    "app.controllers.api",
    "app.controllers.auth",
    "app.controllers.backend",
    "app.controllers.block",
    "app.controllers.health",
    "app.controllers.hot_jit",
    "app.controllers.hot_nyi",
    "app.controllers.leak",
    "app.controllers.metrics",
    "app.controllers.products",
    "app.controllers.secure",
    "app.controllers.slow",
    "app.services.leak",
    "app.services.product",
    "app.services.token",
}

function M.init()
    for _, name in ipairs(PRELOAD) do
        require(name)
    end
end

function M.init_worker()
    cache.init_worker()
end

function M.rewrite()
    if ngx.is_subrequest then
        return
    end
    request_id.rewrite()
end

-- Subrequests skip the access phase in nginx, so no guard is needed here.
function M.access()
    cors.access()
    rate_limit.access()
    auth.access()
end

function M.header_filter()
    if ngx.is_subrequest then
        return
    end
    request_id.header_filter()
    cors.header_filter()
end

function M.log()
    metrics.log()
end

return M
