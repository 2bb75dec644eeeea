//! A test backend as a process of its own, for the lifecycle tests'
//! start and stop commands: `backend PORT BODY LIFETIME_SECS` serves HTTP
//! (and UDP) on PORT in the network namespace it was started in, answering
//! BODY, until it is killed or LIFETIME_SECS have passed (so that a test
//! that dies cannot leave it running for long).

use std::{process::ExitCode, time::Duration};

use bluegreen_testbed::http::Backend;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, body, lifetime] = args.as_slice() else {
        eprintln!("usage: backend PORT BODY LIFETIME_SECS");
        return ExitCode::from(2);
    };
    let (Ok(port), Ok(lifetime)) = (port.parse::<u16>(), lifetime.parse::<u64>()) else {
        eprintln!("backend: PORT and LIFETIME_SECS are numbers");
        return ExitCode::from(2);
    };
    let _backend = Backend::start_here(port, body);
    std::thread::sleep(Duration::from_secs(lifetime));
    ExitCode::SUCCESS
}
