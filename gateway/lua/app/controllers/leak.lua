-- Planted leak: a module-level table that every request adds to and nothing
-- removes (until /leak?reset=1), as caches without bounds do.
local M = {}

local retained = {}

function M.leak_grow_work(id)
    retained[#retained + 1] = { id = id, at = ngx.now(), payload = string.rep("x", 256) }
    return #retained
end

function M.grow()
    if ngx.var.arg_reset then
        retained = {}
        ngx.say("0 entries")
        return
    end
    ngx.say(M.leak_grow_work(ngx.ctx.request_id), " entries")
end

return M
