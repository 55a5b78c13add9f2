-- Small JSON endpoints that exist to exercise the middleware.
local response = require("app.utils.response")

local ngx = ngx

local M = {}

-- Behind the "limited" rate-limit zone; the body is not the point, the 429 is.
function M.limited()
    response.json(200, { ok = true, zone = "limited" })
end

function M.not_found()
    response.json(404, { error = "not found", path = ngx.var.uri })
end

return M
