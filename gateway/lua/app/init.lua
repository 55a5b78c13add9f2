-- Application entry: loaded once in init_by_lua, before nginx forks its workers.
local M = {}

function M.init()
    -- Loading every module here shares their bytecode with all workers (copy on write).
    require("resty.core")
    require("cjson.safe")
    require("app.config")
    require("app.middleware")
    require("app.services.cache")
    require("app.controllers.api")
    require("app.controllers.hot")
    require("app.controllers.alloc")
    require("app.controllers.block")
    require("app.controllers.leak")
    require("app.controllers.metrics")
    require("app.controllers.health")
end

return M
