-- Phase handlers shared by every location of the gateway server.
local request_id = require("app.middleware.request_id")
local cors = require("app.middleware.cors")
local rate_limit = require("app.middleware.rate_limit")
local auth = require("app.middleware.auth")

local M = {}

function M.rewrite()
    request_id.assign()
    cors.apply()
end

function M.access()
    rate_limit.check()
    auth.check()
end

return M
