//! Work that goes on after a command returns, in processes of its own: the child that
//! deletes a removed endpoint's interface (`unlink`, below the datapath) and the upgrader
//! that moves endpoints' anti-spoofing programs from cls_bpf filters to tcx links
//! (`upgrade`, above it).

pub mod unlink;
pub mod upgrade;
