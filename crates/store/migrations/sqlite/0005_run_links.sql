-- Links between runs and what made them, and the node status of workflow runs.
--
-- `step_of` is the workflow run that started this run for one of its nodes (its id; the whole
-- `StepOf` link, with the step's name and item index, is `step`, as JSON). Like
-- `services.run_id` it is not a foreign key: a deleted workflow run leaves its steps' records
-- as they are. `produced_by` is the key of the trigger that created the run.
-- `workflow` is `status.workflow` (serde_json of `WorkflowStatus`) of workflow runs, NULL for
-- other runs, replaced whole by the workflow engine. `artifacts` is `status.artifacts`, the
-- artifacts a run logged (name → key, JSON), set with its terminal transition.
ALTER TABLE runs ADD COLUMN step_of TEXT;
ALTER TABLE runs ADD COLUMN step TEXT;
ALTER TABLE runs ADD COLUMN produced_by TEXT;
ALTER TABLE runs ADD COLUMN workflow TEXT;
ALTER TABLE runs ADD COLUMN artifacts TEXT;

CREATE INDEX runs_step_of ON runs (step_of, id);
