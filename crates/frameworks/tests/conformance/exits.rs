//! Exit codes and signals, in the contract's event order.

use super::{exec, shell, Harness, Platform};
use crate::support::TestResult;

pub async fn exit_codes_come_back_in_contract_order<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("exit-codes").await?;
    for (name, code) in [("zero", 0), ("three", 3)] {
        let execution = exec(name);
        let outcome = h
            .run_to_end(&execution, shell(&format!("echo {name}; exit {code}")))
            .await?;
        ensure!(
            outcome.exit_code == Some(code)
                && outcome.signal.is_none()
                && outcome.failure.is_none(),
            "{name}: {outcome:?}"
        );
    }
    Ok(())
}

pub async fn a_job_killed_by_a_signal_reports_the_signal<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("killed").await?;
    let outcome = h
        .run_to_end(&exec("killed"), shell("kill -KILL $$"))
        .await?;
    ensure!(
        outcome.exit_code.is_none() && outcome.signal == Some(9),
        "{outcome:?}"
    );
    Ok(())
}
