"""The operator dashboard: server-rendered pages (:mod:`.views`), the JSON documents they poll
(:mod:`.data`), the queries behind them (:mod:`.queries`), figure formatting (:mod:`.format`) and
session access rules (:mod:`.access`); templates and static files (uPlot vendored) alongside."""
