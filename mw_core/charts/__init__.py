"""Charts: PNG pictures of prices, alerts and the watched market (matplotlib, Agg, no display).

Rooms inside:
- `model`: the plain records the builders take and return (`Chart`, `HeadlineMark`, ...).
- `render`: the one way a figure becomes PNG bytes (`Figure` + `FigureCanvasAgg`, no pyplot
  global state, so builders are safe to call from several threads) and the text-only figure.
- `alert`, `market`: the builders (`alert_chart`, `overview_chart`, `day_chart`); pure.
- `embed`: `markdown_image` (data URI for Dagster's markdown view) and the HTML report writer.
- `reports`: use cases over the database (`alert_charts`, `market_overview`, `daily_report`).

This package imports nothing on import, so the repository can use `model` without matplotlib.
Nothing here imports dagster: `mw_dagster` calls the use cases under ``asyncio.run``.
"""
