-- The same request over and over (method, path and headers from wrk's command line), with the
-- shared report. Used for the status endpoint and the bare JSON endpoint.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function setup(thread)
   bench_setup(thread)
end
