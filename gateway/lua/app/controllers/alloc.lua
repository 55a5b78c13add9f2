-- Planted problem: allocation churn. Tables grow one slot at a time instead of
-- being presized, and a string is built by repeated `..`, copying everything
-- built so far on every step. An allocation profiler should rank
-- alloc_churn_work as the top allocating function.
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

local M = {}

function M.alloc_churn_work(n)
    local rows = {}
    for i = 1, n do
        local row = {}
        row.id = i
        row.sku = "sku-" .. i
        row.price = i * 1.25
        row.tags = {}
        for t = 1, 6 do
            row.tags[#row.tags + 1] = "tag-" .. (i + t) % 97
        end
        rows[#rows + 1] = row
    end
    local csv = ""
    for i = 1, #rows do
        csv = csv .. rows[i].sku .. ";" .. rows[i].tags[1] .. ","
    end
    return #csv, #rows
end

function M.handle()
    -- The string building is quadratic: twice the rows is four times the copying.
    local scale = args.num("n", 1, 0.001, 100)
    local bytes, rows = M.alloc_churn_work(math.max(1, math.floor(scale * config.planted.alloc_churn_rows)))
    response.json(200, { route = "/alloc/churn", n = scale, rows = rows, bytes = bytes })
end

return M
