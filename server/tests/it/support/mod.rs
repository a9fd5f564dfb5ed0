//! The one harness of the server's tests: the server in this process ([`test_server`]),
//! the real binary ([`process`]), both databases ([`db`]), bounded waits ([`poll`]), git
//! repositories ([`git`]), forges and their webhooks ([`forge`]) and requests without a
//! socket ([`http`]).

pub mod db;
pub mod forge;
pub mod git;
pub mod http;
pub mod poll;
pub mod process;
pub mod test_server;

pub(crate) use db::both_databases;
