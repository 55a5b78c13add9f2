-- Everything under /api/secure/ runs behind the auth middleware, which has put
-- the verified user into ngx.ctx.
local response = require("app.utils.response")

local ngx = ngx

local M = {}

function M.handle()
    response.json(200, {
        user = ngx.ctx.user,
        resource = ngx.var.uri,
        request_id = ngx.ctx.request_id,
    })
end

return M
