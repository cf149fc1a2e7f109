//! Links the binary as a position-dependent executable on Linux. It is exec'd once per local
//! run (`runplane supervise`) and per CLI call: as a PIE the dynamic loader applies ~78,000
//! relative relocations at every start (about 1 ms, most of a supervisor's start-up). The
//! cost is that the executable's own image is not address-randomized (libraries, heap and
//! stacks still are).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=runplane=-no-pie");
    }
}
