//! Exports the simulator's `getrandom` interposer (src/entropy.rs) to the dynamic
//! symbol table, where `dlsym(RTLD_DEFAULT, "getrandom")` (the `getrandom` crate's
//! way to find it) looks before libc. Targets that do not define it are unaffected.
fn main() {
    println!("cargo::rustc-link-arg=-Wl,--export-dynamic-symbol=getrandom");
}
