include!("../../build-support/test_cfg.rs");

fn main() {
    emit_test_cfgs();
}
