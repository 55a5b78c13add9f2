mod image;
mod live;
mod trace;
mod unit;
