//! The one harness of the server's tests: the server in this process ([`test_server`]) or as
//! real processes ([`process`]; [`served`]: one with a registered repository and
//! tokens), both databases ([`db`]), bounded waits ([`poll`]), git
//! repositories ([`git`]), forges and their webhooks ([`forge`]), requests without a
//! socket ([`http`]), small filesystems to fill ([`tmpfs`]) and what runners leave on
//! the Docker engine ([`docker`]), the web UI's scene ([`ui`]), a stand-in OAuth2 forge ([`oauth_forge`]) and a
//! cookie-keeping HTTP client that follows redirects hop by hop ([`web_client`]).

pub mod browser;
pub mod db;
pub mod docker;
pub mod forge;
pub mod git;
pub mod http;
pub mod oauth_forge;
pub mod poll;
pub mod process;
pub mod served;
pub mod test_server;
pub mod tmpfs;
pub mod ui;
pub mod web_client;

pub(crate) use db::both_databases;
