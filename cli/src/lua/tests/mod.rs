mod image;
mod live;
mod unit;
