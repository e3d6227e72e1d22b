//! What `vkhost plugin translate` shows, natively and standalone:
//! `cargo run -p cube-provider --example translate -- NODE CONFIG.json MANIFEST.yaml` prints the
//! CreateCubePod request a pod would produce, or the error.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [node, config, manifest] = args.as_slice() else {
        eprintln!("usage: translate NODE CONFIG.json MANIFEST.yaml");
        return ExitCode::from(2);
    };
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let pod = match cube_provider::pod_from_manifest(&read(manifest)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {}: {}", e.reason, e.field, e.message);
            return ExitCode::FAILURE;
        }
    };
    match cube_provider::translate(node, &read(config), &pod) {
        Ok(req) => {
            print!("{}", req.render());
            ExitCode::SUCCESS
        }
        Err(cube_provider::TranslateError::Invalid(e)) => {
            eprintln!("{}: {}: {}", e.reason, e.field, e.message);
            ExitCode::FAILURE
        }
        Err(cube_provider::TranslateError::NotReady(m)) => {
            eprintln!("not ready (the host would retry): {m}");
            ExitCode::FAILURE
        }
    }
}
