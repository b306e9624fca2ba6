// Rebuild when a migration or a Lua script changes: both are embedded.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=lua");
}
