-- wrk script: makes every request a little different, for whatever URL wrk
-- was given, and optionally paces each connection.
--
--   wrk -t2 -c10 -d10s -s vary.lua http://127.0.0.1:8080/hot/nyi
--   wrk -t2 -c10 -d10s -s vary.lua http://127.0.0.1:8080/hot/nyi -- 50
--
-- The optional argument is a delay in ms before each request on a connection;
-- the caller derives it from the wanted rate. Per request:
--   * X-Request-Id is unique (thread number + counter);
--   * a `seq` query parameter is appended; an `n=` already in the URL is
--     kept, so the cost of each request stays what the caller chose;
--   * /api/products/<id> cycles through ids 1..100, so the cache sees misses
--     first and hits afterwards.

local counter = 0
local base_path, base_query

-- setup() runs in wrk's main Lua state; thread:set() defines a global in the
-- thread's own state, read below as `thread_id`.
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end

function init(args)
    local ms = tonumber(args[1])
    if ms ~= nil then
        -- wrk only paces when a global `delay` exists after init(), so define
        -- it only when asked: an always-present delay() returning 0 still
        -- costs a timer round trip per request.
        function delay()
            return ms
        end
    end
    local q = wrk.path:find("?", 1, true)
    if q then
        base_path, base_query = wrk.path:sub(1, q - 1), wrk.path:sub(q + 1)
    else
        base_path = wrk.path
    end
end

function request()
    counter = counter + 1
    local path = base_path
    local products = path:match("^(/api/products/)%d+$")
    if products then
        path = products .. (counter % 100 + 1)
    end
    local query = "seq=" .. counter
    if base_query then
        query = base_query .. "&" .. query
    end
    wrk.headers["X-Request-Id"] = "wrk-" .. (thread_id or 0) .. "-" .. counter
    return wrk.format(nil, path .. "?" .. query)
end
