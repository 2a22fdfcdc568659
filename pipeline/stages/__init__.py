"""Pipeline stages: Arrow tables in, new Arrow tables out; models load in `setup()`.

A stage is any object with `name`, `resources` (a `StageResources`), `setup()` and
`__call__(table) -> table`. Executors (`pipeline.executor`) run a chain of them in-process or
on Ray, translating `resources` into actor options.
"""
