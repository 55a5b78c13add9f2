-- wrk script: every request differs a little (request id, a query counter), like
-- wrk's counter.lua, so caches and logs see real variety. An optional argument
-- paces each connection: `wrk ... -s vary.lua URL -- <delay ms>`.
local counter = 0
local pause = 0

function init(args)
    pause = tonumber(args[1]) or 0
end

function request()
    counter = counter + 1
    wrk.headers["X-Request-Id"] = "wrk-" .. counter
    local sep = string.find(wrk.path, "?", 1, true) and "&" or "?"
    return wrk.format(nil, wrk.path .. sep .. "c=" .. counter)
end

function delay()
    return pause
end
