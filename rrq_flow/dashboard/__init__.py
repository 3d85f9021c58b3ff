"""``rrq-flow dashboard``: a web page to watch a pipeline and operate its dead letters.

A trio-native ASGI app (Starlette on Hypercorn's trio worker) over the same Admin functions the
CLI uses; see :mod:`rrq_flow.dashboard.app` for the pages and API, and
:mod:`rrq_flow.dashboard.security` for what protects the actions.
"""
