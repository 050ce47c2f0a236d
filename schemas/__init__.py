"""What people write and what crosses a boundary: the launch plan, the health profile and
every message between CLI, workflows and activities. Pydantic models only; nothing here
imports Temporal, so the CLI, workflows and activities all share them."""
