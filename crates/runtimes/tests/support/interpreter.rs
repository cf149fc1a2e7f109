//! A [`HandlerInspector`] running the real interpreter, for tests: shared by this crate's unit
//! tests and its integration tests. The server's (with a timeout and limits) is tested in the
//! server crate.

use super::{HandlerInspector, Inspection, InspectionError};
use std::io::{Seek, Write};
use std::process::Command;

/// The interpreter the tests inspect sources with (the default one of runs).
pub const INTERPRETER: &str = "/usr/bin/python3";

#[derive(Debug, Clone, Copy)]
pub struct TestInspector;

pub fn inspector() -> TestInspector {
    TestInspector
}

impl HandlerInspector for TestInspector {
    fn run(&self, inspection: Inspection<'_>) -> Result<Vec<u8>, InspectionError> {
        let mut input = tempfile::tempfile().expect("a temporary file");
        input
            .write_all(inspection.input)
            .expect("the request written");
        input.rewind().expect("the request rewound");
        let output = Command::new(inspection.interpreter)
            .args(["-I", "-S", "-c", inspection.script])
            .stdin(input)
            .output()
            .map_err(|error| InspectionError::Start {
                interpreter: inspection.interpreter.to_string(),
                reason: error.to_string(),
            })?;
        if !output.status.success() {
            return Err(InspectionError::Failed {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(output.stdout)
    }
}
