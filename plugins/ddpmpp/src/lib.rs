//! (work in progress)

use memlab_plugin_api::prelude::*;

fn register(_p: &mut Plugin) {}

export_plugin!(register);
