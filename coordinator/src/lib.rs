pub mod controller;
pub mod plan;
