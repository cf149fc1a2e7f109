//! Input artifacts of runs: `RunRequest.inputs` (param → `name`, `name:version` or a
//! `store://` key) pinned to artifact keys at submit, and handed to the run at dispatch as
//! local paths in the parameters.
