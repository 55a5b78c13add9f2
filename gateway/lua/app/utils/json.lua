-- cjson.safe returns nil+err instead of raising, so a bad body is a 400,
-- not a 500 with a Lua traceback. (Debian's lua-cjson is upstream 2.1, not
-- OpenResty's fork: empty tables always encode as {}.)
local cjson = require("cjson.safe")

local M = {
    encode = cjson.encode,
    decode = cjson.decode,
    null = cjson.null,
}

return M
